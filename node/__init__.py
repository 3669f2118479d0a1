"""The cxr-node process: command line, DIMSE and HTTP fronts."""
