"""Pure protocol and security logic: no sockets, files, clock or environment.

Everything here takes its inputs as values (time included) so that it can be tested
table-driven and fuzzed without I/O. Both the server and the agent build on it.
"""
