"""The Streamlit dashboard: a thin shell over clip_icm.service (run: streamlit run dashboard/app.py)."""
