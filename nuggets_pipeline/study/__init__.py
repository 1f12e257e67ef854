"""The golden-vs-controls study (docs/study.md): ``sizing`` (its settings and time estimate), ``results`` (what
results.json holds), ``render`` (the plot and the page's blocks), ``scored_pool`` (the scored pool written and
imported), ``conduct`` (the study from its settings to its rendered page)."""
