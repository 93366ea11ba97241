"""eprjax in napari: the plugin that napari finds through the ``napari.manifest`` entry point
(``napari.yaml`` here). Nothing in eprjax's library or commands imports this package; napari
imports its modules when a reader, writer, sample or widget of ours is first used. The layer
conversions and the computations behind the widgets (`_layers`, `_work`) need neither
napari nor Qt; `_widgets` needs both."""
