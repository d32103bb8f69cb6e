"""A page that a later issue fills in: says what it will show and why it matters."""
import streamlit as st


def placeholder(title: str, idea: str, coming: str, issue: int) -> None:
    st.title(title)
    st.markdown(idea)
    st.info(f"Coming soon (issue #{issue}): {coming}", icon=":material/construction:")
