"""socat's own language: its command-line grammar and keyword tables.

`grammar.parse_command_line(argv)` turns a socat command line into typed
addresses and options; `keywords` holds the address types, options and
aliases of the socat build it was generated from. The audit, `policy
suggest` and listener discovery all read command lines through here.
"""
