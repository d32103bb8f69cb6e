"""cnnviz: the Streamlit router. `streamlit run app.py`"""
import logging

import streamlit as st

# A lecture link (`?lecture=1`) opens with the sidebar folded away, for the projector.
st.set_page_config(page_title="cnnviz: inside CNNs", page_icon=":material/visibility:", layout="wide",
                   initial_sidebar_state="collapsed" if st.query_params.get("lecture") == "1" else "auto")

from cnnviz import jobs  # noqa: E402  (after set_page_config)
from cnnviz.app.pages import pages  # noqa: E402
from cnnviz.app.sidebar import sidebar  # noqa: E402

# A server's short jobs (a prediction, one recording) each take one torch thread: the
# sessions are the parallelism. With torch's default (every core) each script thread's
# OpenMP team spins on cores that other sessions and the browsers need; measured on the
# 2-core machine, an upload cost the server 0.88 s of CPU that way and 0.18 s on one thread.
jobs.RUNNER.short_threads = 1

page = st.navigation(pages())  # new page objects every run (see pages())
try:
    sidebar()  # the run's Selection, read by the page through router.selection()
    page.run()
except Exception as e:  # a bug must not show a traceback to a lecture hall
    logging.getLogger("cnnviz").exception("page failed")
    st.error(f"Something went wrong on this page ({type(e).__name__}: {e}). "
             "Try another image or model; the details are in the server log.")
