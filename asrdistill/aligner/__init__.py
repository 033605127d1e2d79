"""Built-in GMM-HMM aligner: flat-start monophones, a phonetic decision tree over
triphone states (the senones), tied-state triphone re-alignment, and import of
existing Kaldi alignments."""
