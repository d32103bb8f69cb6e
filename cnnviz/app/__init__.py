"""What several Streamlit pages share (the only part of cnnviz that imports streamlit)."""
