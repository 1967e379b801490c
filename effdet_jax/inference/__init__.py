"""Using a trained network: the `Detector` (images in, detections out), COCO
evaluation on the detector's function, and drawing boxes."""
