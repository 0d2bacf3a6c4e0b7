"""The Streamlit entry point of the inspection dashboard (``streamlit run dashboard/app.py``; started by
:func:`steelqc.dashboard.server.run`). The pages live in :mod:`steelqc.dashboard.views`."""

from __future__ import annotations

import streamlit as st

from steelqc.dashboard import views

st.set_page_config(page_title="steelqc inspection", layout="wide")
views.navigation().run()
