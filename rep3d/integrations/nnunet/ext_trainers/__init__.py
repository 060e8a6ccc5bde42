"""The folder ``nnUNet_extTrainer`` points at (``rep3d nnunet-trainer-path``): nnU-Net imports the modules in it by
file name to find trainer classes; the classes themselves live in :mod:`rep3d.integrations.nnunet.trainer`."""
