"""The command line: ``revsearch index``, ``query``, ``info``, ``move``; result mosaics."""
