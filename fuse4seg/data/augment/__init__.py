"""fuse4seg/data/augment"""
