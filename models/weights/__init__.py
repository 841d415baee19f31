"""Checkpoint weights: reading files and converting keys between the reference's layouts, Hugging Face XLM-R,
official Swin and our modules. Pure state-dict filters, one module per layout; nothing here imports a model class.

- ``files``: reading a weight file (``.th``/``.pth``/``.pt``/``.safetensors``), wrapper prefixes removed;
- ``swin``: official / reference Swin keys <-> timm's, bias-table interpolation, loading an official Swin file;
- ``xlmr``: a Hugging Face XLM-R folder -> the text encoder (layer selection, renames);
- ``pretrain``: the reference pre-training layout <-> ``CCLMPretrain``;
- ``finetune``: the reference fine-tuning layouts and the reference's pre-training -> task rules <-> our task models;
- ``loading``: loading a converted state dict into a model, reporting every key.
"""
