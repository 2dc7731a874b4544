"""How large an image the server decodes (fer_async.imaging applies these limits).

Standard library only: the settings (`--max-pixels`) read them without importing OpenCV.
"""

from __future__ import annotations

# Decompression bombs: a PNG of a few KB can declare 20000x20000 pixels and make the decoder
# allocate 1.2 GB. imaging reads the size from the header and refuses before decoding. 4 Mpx
# covers every webcam frame up to 2560x1600 with room to spare.
MAX_PIXELS = 4096 * 1024
# A JPEG over MAX_PIXELS is decoded at 1/2 or 1/4 scale (imaging.decode_scaled), never at full
# size. Its pixels are still entropy-decoded, so this many times the budget is the most accepted
# at all: 16 x 4 Mpx lets a 50 MP phone photo in.
MAX_REDUCED_FACTOR = 16
# Video frames are decoded whole before they are scaled down, by FFmpeg in several threads: a
# 1.9 MB MJPEG AVI of 10000x10000 frames took 1.1 GB to analyse. 8K UHD is the largest frame
# cameras record; larger ones are refused from the header, or at the first such frame.
MAX_VIDEO_PIXELS = 7680 * 4320
