"""fuse4seg/data/package"""
