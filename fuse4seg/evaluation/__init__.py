"""fuse4seg/evaluation"""
