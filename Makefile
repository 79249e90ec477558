# Two commands a new user needs: `make quickstart` and `make test`.
# Both create .venv when it is missing and install the project into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/smartwatch

.PHONY: install quickstart stage0 curriculum test lint bench clean

# The main job needs the package alone; the tests also need pytest, the Hugging Face extras and the
# example plugin (installed by `make test`, not by `make quickstart`).
$(BIN)/lightning-vlm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# One pip call for everything the tests need (the package with its extras and the plugin): a second
# call would resolve the whole tree again. hf: the Hugging Face backbone/encoder tests run too.
$(VENV)/.test-deps: pyproject.toml plugins/lightning-vlm-flow/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,hf]" -e plugins/lightning-vlm-flow
	touch $(BIN)/lightning-vlm $@

install: $(BIN)/lightning-vlm

# The main job on the built-in synthetic data: data -> token cache of the shipped VQ tokenizer
# (stage0/vq.ckpt; training then skips the encoder) -> fit the quickstart VLM -> test it (one
# metrics table, chance beside each, and the generated-vs-truth grid). Stage 0 (the attribute
# reader and the encoders) ships in stage0/; `make stage0` rebuilds it.
quickstart: install
	@if [ -f $(DATA)/manifest.json ]; then $(BIN)/lightning-vlm data summary $(DATA); \
	else $(BIN)/lightning-vlm data smartwatch --config configs/data/smartwatch.yaml --out $(DATA); fi
	$(BIN)/lightning-vlm encode --encoder vq --checkpoint stage0/vq.ckpt --data $(DATA)
	$(BIN)/lightning-vlm fit --config configs/smartwatch/quickstart.yaml
	$(BIN)/lightning-vlm test --config configs/smartwatch/quickstart.yaml --ckpt_path runs/quickstart/last.ckpt
	@echo "TensorBoard: $(BIN)/tensorboard --logdir runs"

# Rebuilds the shipped stage 0 from the generator's data: each fit, then its fp16 copy in stage0/
# checked on fresh renders, with the command, commit, CPU and scores in stage0/provenance.json.
# ENCODERS="vq" rebuilds the reader and the VQ tokenizer only.
ENCODERS ?= vq ae semantic
STAGE0_PACK = $(BIN)/python -m lightning_vlm.smartwatch.stage0 pack
stage0: install
	@test -f $(DATA)/manifest.json || $(BIN)/lightning-vlm data smartwatch --config configs/data/smartwatch.yaml --out $(DATA)
	$(BIN)/lightning-vlm fit --config configs/eval/reader.yaml
	$(STAGE0_PACK) reader runs/reader/best.ckpt --command "lightning-vlm fit --config configs/eval/reader.yaml"
	@for enc in $(ENCODERS); do \
	  $(BIN)/lightning-vlm fit --config configs/encoders/$$enc.yaml || exit 1; \
	  $(STAGE0_PACK) $$enc runs/encoders/$$enc.ckpt --command "lightning-vlm fit --config configs/encoders/$$enc.yaml" || exit 1; \
	done

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

test: $(VENV)/.test-deps lint
	$(BIN)/python -m pytest -q -n auto --dist loadscope --no-loadscope-reorder   # one worker per core (tests/conftest.py splits the threads and puts the slowest modules first); a module stays on one worker, so its fixtures are built once

# The linter configured in pyproject.toml ([tool.ruff]); `make test` runs it first.
lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/step_efficiency.py --config configs/smartwatch/quickstart.yaml
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) *.egg-info lightning_logs
