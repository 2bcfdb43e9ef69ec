"""fuse4seg/data/build"""
