"""Looking at results: the HTML report (`show`), drawing boxes, and `validate` (what int8 changes
on your own pairs, and the precision it recommends)."""
