"""`audit ui`: the read-only dashboard, its static export and parameter importance."""
