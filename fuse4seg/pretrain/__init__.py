"""Self-supervised multimodal pre-training of the segmenters' encoders (MICS-style; ``fuse4seg pretrain``).

One concern per module: :mod:`~fuse4seg.pretrain.objectives` (the three losses as pure functions),
:mod:`~fuse4seg.pretrain.model` (the shared 1-channel encoder and its heads), :mod:`~fuse4seg.pretrain.options`
(the declared options), :mod:`~fuse4seg.pretrain.data` (the source-only slice reader),
:mod:`~fuse4seg.pretrain.runner` (the loop: checkpoints, TensorBoard, exact resume). Copying a pre-trained
encoder into a segmenter is :mod:`fuse4seg.runkit.pretrained`: train reads what pretrain writes, and neither
imports the other. Nothing is imported here, so ``fuse4seg --help`` does not pay for torch.
"""
