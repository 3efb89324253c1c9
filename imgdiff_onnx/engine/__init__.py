"""The engine: one pair in, its boxes out (DESIGN.md S1-S8).

preprocess -> models (onnxruntime sessions, their graph contracts) -> stages (crops, candidates,
word matching) -> pipeline (DifferenceAreaGenerator). Also what the engine loads and checks: the
model folder's manifest and files (manifest, integrity, modelset, precision, band), and the
caption step (captions, lexicon, worddiff). Nothing here reads or writes a results file.
"""
