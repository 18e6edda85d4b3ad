"""socat's own language: its command-line grammar and keyword tables.

`grammar.parse_command_line(argv)` turns a socat command line into typed
addresses and options; `keywords` holds the address types, options and
aliases of the socat build it was generated from; `tables` reads such tables
(`-hhh`) and adds the build-dependent keywords that build lacks; `build`
asks a real binary (`-V`, `-hhh`) which of them it accepts. The audit,
`policy suggest` and listener discovery all read command lines through here.
"""
