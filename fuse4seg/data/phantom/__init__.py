"""fuse4seg/data/phantom"""
