"""Studies page: every paper study (seqlens.studies.registry) with its claim, and, from an output
folder holding ``NAME/metrics.json`` and ``NAME/report.html`` (written by ``seqlens study NAME
--out FOLDER/NAME``), whether it reproduced, the verdict, the metrics and the report itself."""

import os

import streamlit as st
import streamlit.components.v1 as components

from seqlens.studies.registry import STUDIES, read_run

st.title("Studies")
st.caption("One scripted study per paper. Run one with `seqlens study NAME --out FOLDER/NAME` "
           "(`--smoke` for a seconds-long check that is not a measurement); this page reads FOLDER.")

folder = st.text_input("Output folder", value=os.environ.get("SEQLENS_STUDY_DIR", "runs"), key="w_studies_dir")
LABEL = {True: "reproduced", False: "not reproduced", None: "not measured"}


def status(metrics: dict | None) -> str:
    if metrics is None:
        return "not run"
    if "reproduced" not in metrics:  # a measurement without a yes / no claim (sae_frontier)
        return "run" + (" (smoke)" if metrics.get("settings", {}).get("smoke") else "")
    r = metrics.get("reproduced")
    if isinstance(r, dict):  # per-model verdicts (lrp_faithfulness)
        return f"reproduced on {sum(bool(v) for v in r.values())}/{len(r)}"
    return LABEL.get(r, str(r)) + (" (smoke)" if metrics.get("smoke") else "")


runs, rows = {}, []
for name, info in STUDIES.items():
    try:
        runs[name] = read_run(folder, name)
    except ValueError as e:
        st.error(f"{name}: {e}")
        runs[name] = (None, None)
    m = runs[name][0]
    rows.append({"study": name, "paper": info.paper, "claim": info.claim, "result": status(m),
                 "date": (m or {}).get("date", ""), "module": "yes" if info.available else "not installed"})
st.dataframe(rows, hide_index=True, use_container_width=True, key="studies_table")

name = st.selectbox("Study", list(STUDIES), key="w_studies_name")
info, (metrics, report) = STUDIES[name], runs[name]
st.subheader(name)
st.markdown(f"**Paper:** {info.paper}  \n**Claim:** {info.claim}")
st.code(f"seqlens study {name} --out {folder}/{name}", language="bash")
if metrics is None:
    st.info(f"No run of {name} in {folder!r} yet.")
    st.stop()
st.markdown(f"**Result:** {status(metrics)}" + (f": {metrics['verdict']}" if metrics.get("verdict") else ""))
for note in metrics.get("notes", []):
    st.caption(note)
if metrics.get("missing"):
    st.warning("Organisms missing: " + ", ".join(metrics["missing"]))
with st.expander("metrics.json", expanded=False):
    st.json(metrics)
if report is not None:
    html = report.read_text()
    st.download_button("Download report.html", html, file_name=f"{name}-report.html", mime="text/html",
                       key="studies_download")
    components.html(html, height=900, scrolling=True)
