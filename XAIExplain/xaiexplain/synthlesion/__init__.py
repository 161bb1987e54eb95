"""The SynthLesion world: synthetic brains with lesions, the demo classifiers, their training, the demo
command and the quality benchmark with its report."""
