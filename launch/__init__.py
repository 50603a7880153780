"""The command line: absl flags defined once, flag files, and thin mains."""
