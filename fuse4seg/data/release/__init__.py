"""fuse4seg/data/release"""
