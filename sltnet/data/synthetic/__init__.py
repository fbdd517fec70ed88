"""The synthetic video benchmark (docs/data.md#synthetic-video-benchmark): short videos where temporal
information is necessary.

Every video shows 1..M objects moving over a smooth background. An object's *class evidence* is a
texture of a class-specific pattern drawn in a class-specific ink colour; everything else about it
(silhouette, fill colour, outline, size, speed) is drawn independently of its class. On *hidden*
frames, contiguous runs of each track's frames, the evidence is removed from the pixels (the object
is drawn in its plain, class-neutral fill) and the frame shows one of these degradations:

- ``motion_blur``: the object smeared along its motion;
- ``occlusion``: a plain grey bar across the object's middle;
- ``defocus``: the object Gaussian-blurred;
- ``low_light``: the object's surroundings darkened, with extra noise;
- ``noise``: heavy noise over the object;
- ``neutral``: nothing else; the plain appearance alone.

A single hidden frame is therefore ambiguous between all classes while the object stays
localisable; the other frames of the same track show its class. The first annotated frame of a
track is always shown, so causal (sequential) models have seen the evidence before any hidden run.

Sampling draws a video from a seed (:mod:`.sampling`), rendering turns it into frames and
annotations (:mod:`.rendering`), writing puts a split on disk (:mod:`.writing`).
"""
