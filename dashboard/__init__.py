"""The inspection dashboard (``steelqc dashboard``): a Streamlit app over the registry and the champion.

Pages: *Inspect* (one image through a registered version: decision, probabilities, the critical flag under the
calibrated threshold, a Grad-CAM overlay), *Models* (versions, aliases, gate results, the audit trail), and the
placeholders *Review* and *Monitoring*. The app reads; it never trains, registers or moves an alias.

Layer: beside ``steelqc.flows`` at the top; it may import flows, monitoring, model_registry and tasks, and nothing
imports it. :mod:`.server` starts it (``streamlit run``, bound to 127.0.0.1 by default: Streamlit has no login).
"""
