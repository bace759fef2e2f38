"""aiohttp server halves: thin glue between the hub and each transport's sans-I/O codec."""
