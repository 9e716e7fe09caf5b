"""Several machines: fleet.toml, systemd units, the Ansible playbook that installs them."""
