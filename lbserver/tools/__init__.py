"""Tools run from the command line: the storm simulator, the site-info importer, the demo."""
