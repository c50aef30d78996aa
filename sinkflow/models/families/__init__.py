"""One file per HF model family; `conf/model/*.yaml` names the family class."""
