"""fuse4seg/runkit"""
