"""Text for text-guided fusion (SMFusion): encoders of slice descriptions and the image-text alignment model
behind the medical semantic loss. The descriptions themselves are written by fuse4seg.data.package.describe."""
