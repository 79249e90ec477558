# Two commands a new user needs: `make quickstart` and `make test`.
# Both create .venv when it is missing and install the project into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/smartwatch

.PHONY: install quickstart curriculum test bench clean

$(BIN)/lightning-vlm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,hf]"  # hf: the Hugging Face backbone/encoder tests run too
	$(BIN)/pip install -q -e plugins/lightning-vlm-flow
	touch $@

install: $(BIN)/lightning-vlm

# The main job on the built-in synthetic data: data -> attribute reader and stage-0 VQ
# encoder (when missing; the encoder fit ends with the reader's check of its
# reconstructions) -> its token cache (training then skips the encoder) -> fit the
# quickstart VLM -> test it (prints the metrics table).
quickstart: install
	@if [ -f $(DATA)/manifest.json ]; then $(BIN)/lightning-vlm data summary $(DATA); \
	else $(BIN)/lightning-vlm data smartwatch --config configs/data/smartwatch.yaml --out $(DATA); fi
	@test -f runs/reader/best.ckpt || $(BIN)/lightning-vlm fit --config configs/eval/reader.yaml
	@test -f runs/encoders/vq.ckpt || $(BIN)/lightning-vlm fit --config configs/encoders/vq.yaml
	$(BIN)/lightning-vlm encode --encoder vq --checkpoint runs/encoders/vq.ckpt --data $(DATA)
	$(BIN)/lightning-vlm fit --config configs/smartwatch/quickstart.yaml
	$(BIN)/lightning-vlm test --config configs/smartwatch/quickstart.yaml --ckpt_path runs/quickstart/last.ckpt
	@echo "TensorBoard: $(BIN)/tensorboard --logdir runs"

# A curriculum: each stage overlay (configs/smartwatch/curriculum/) composed after the cell config,
# each stage in runs/<cell>_<stage> and started from the previous stage's last.ckpt (docs/configs.md).
#   make curriculum CELL=vq_vq                  (also semantic_semantic)
#   make curriculum CELL=semantic_semantic STAGES="stage1 stage2 plan plan2"
#   make curriculum CELL=diffusion_ae STAGES="stage1 diffusion_stage2 diffusion_stage3 diffusion_stage4"
CELL ?= vq_vq
STAGES ?= stage1 stage2 stage3
curriculum: install
	@prev=; for stage in $(STAGES); do \
	  run=runs/$(CELL)_$${stage#diffusion_}; \
	  $(BIN)/lightning-vlm fit --config configs/smartwatch/$(CELL).yaml --config configs/smartwatch/curriculum/$$stage.yaml \
	    --trainer.default_root_dir $$run $${prev:+--model.init_args.init_weights $$prev} || exit 1; \
	  prev=$$run/last.ckpt; \
	done

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/step_efficiency.py --config configs/smartwatch/quickstart.yaml
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) *.egg-info lightning_logs
