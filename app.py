"""cnnviz: the Streamlit router. `streamlit run app.py`"""
import logging
import sys

import streamlit as st

# A lecture link (`?lecture=1`) opens with the sidebar folded away, for the projector.
st.set_page_config(page_title="cnnviz: inside CNNs", page_icon=":material/visibility:", layout="wide",
                   initial_sidebar_state="collapsed" if st.query_params.get("lecture") == "1" else "auto")

from cnnviz import jobs  # noqa: E402  (after set_page_config)
from cnnviz.app.pages import pages  # noqa: E402
from cnnviz.app.sidebar import sidebar  # noqa: E402

# Every job in a worker process: short ones at the server's priority, heavy ones below it
# (see Runner.serve).
jobs.RUNNER.serve()
# The server's event loop (websockets, uploads, every message to every browser) takes the
# interpreter lock in turn with each session's script thread. With 30 scripts running, 5 ms
# turns (Python's default) left it ~150 ms between turns: a class's uploads waited on it,
# not on the model. bench_load (30 sessions): p95 upload->top-5 7.0 s -> 6.4 s.
sys.setswitchinterval(0.001)

page = st.navigation(pages())  # new page objects every run (see pages())
try:
    sidebar()  # the run's Selection, read by the page through router.selection()
    page.run()
except Exception as e:  # a bug must not show a traceback to a lecture hall
    logging.getLogger("cnnviz").exception("page failed")
    # The exception's own text stays in the log: it may name the server's files.
    st.error(f"Something went wrong on this page ({type(e).__name__}). "
             "Try another image or model; the details are in the server log.")
