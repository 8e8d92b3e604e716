# Co-DINO Swin-L's test pipeline and classes around a simulated forward pass (bench/simdevice.py):
# for bench/run.py only, which sets AUTOLABEL_CONFIGS_DIR to this directory, AUTOLABEL_PLUGIN_DIRS
# to bench/ and BENCH_SIM_CARD to the card it made. Never a production model.
_base_ = ["../../configs/co-dino-5scale-swin-l.py"]
custom_imports = dict(imports=["simdevice"], allow_failed_imports=False)
model = dict(_delete_=True, type="SimulatedDetector", data_preprocessor=dict(type="SimulatedTransfer"))
