"""The model: the one object a model directory loads into (:mod:`.store`), its networks
(classifier with peak stimulation, ICN), peaks, PRMs and their explicit backward, and
the export manifest's owner (:mod:`.manifest`)."""
