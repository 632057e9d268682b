"""Lightning callbacks; configs name each by its module path (conf/callbacks/)."""
