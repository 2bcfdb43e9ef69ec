"""fuse4seg/inference"""
