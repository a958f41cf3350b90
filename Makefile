# One command to run, one to test. Both create ./.venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-postgres test-scale sample bench refs clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,postgres,s3]"
	touch $@

install: $(STAMP)

## run: install and serve on 0.0.0.0:8001 (SQLite ./dicom.db, blobs in ./blobs, import root ./import)
run: install
	$(BIN)/dicomsvc serve

## test: install and run the test suite
test: install
	$(BIN)/python -m pytest

## test-postgres: the suite again, against a throwaway PostgreSQL (Debian's postgresql package)
test-postgres: install
	DICOMSVC_TEST_POSTGRES=1 $(BIN)/python -m pytest

## test-scale: the suite as run at scale: a throwaway PostgreSQL index, SeaweedFS S3 blobs, encryption at rest on
test-scale: install
	DICOMSVC_TEST_POSTGRES=1 DICOMSVC_TEST_S3=1 DICOMSVC_TEST_ENCRYPTION=1 $(BIN)/python -m pytest

## sample: copy pydicom's bundled CT_small.dcm into ./import for the README's curl example
sample: install
	mkdir -p import
	$(BIN)/python -c 'import shutil; from pydicom.data import get_testdata_file as f; shutil.copy(f("CT_small.dcm", download=False), "import/CT_small.dcm")'
	@echo "import/CT_small.dcm is ready"

## bench: ingest benchmark (a real uvicorn process; Orthanc side by side when installed)
bench: install
	$(BIN)/python bench/ingest.py

## refs: re-make the dcmtk reference renders (needs: apt-get install dcmtk libgdcm-tools)
refs: install
	$(BIN)/python tests/refs/make_refs.py

clean:
	rm -rf $(VENV) .pytest_cache
