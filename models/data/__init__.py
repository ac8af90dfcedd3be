"""Performance data: the synthetic performer, datasets on disk, readers, the PyTorch Dataset.

* :mod:`.instruments` -- ranges, GM programs, cello strings, the trombone position chart
* :mod:`.scores` -- note lists from the music21 corpus and seeded random melodies
* :mod:`.expression` -- vibrato, shared by the sound and the picture
* :mod:`.synth_audio` -- soundfont audio (TinySoundFont + TimGM6mb, or fluidsynth + FluidR3_GM)
* :mod:`.performer_motion` -- the physics of playing -> exact 67-point keypoints
* :mod:`.performer_render` -- drawing the performer from its keypoints (OpenCV)
* :mod:`.dataset_format` -- the on-disk format (docs/dataset-format.md)
* :mod:`.synth_dataset` -- ``letsplay data synth``: plan, render, resume
* :mod:`.readers` -- letsplay datasets, Sub-URMP, OpenPose JSON
* :mod:`.prepare` -- plain videos -> a dataset (``letsplay data prepare``), keypoints from OpenPose or MediaPipe
* :mod:`.torch_dataset` -- training sequences (frames, CQT windows, keypoints)
* :mod:`.preview` -- a PNG grid of frames with keypoints

Nothing here is imported eagerly: each module pulls in only what it needs.
"""
