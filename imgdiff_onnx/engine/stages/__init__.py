"""The operator's stages between the models and the orchestrator (pipeline.py):

objects.py   S2  object words of a pair (given, or from the caption difference), checked once
crops.py     S4  crop windows of the candidate boxes, crops, the D2 JPEG round trip
ledger.py        which candidate passed which gate (S6 crop-pair similarity, S5 ITM on each side)
matching.py  S5  the first word of a crop's list whose ITM probability is in range
"""
