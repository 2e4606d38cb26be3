#!/bin/sh
# CANN's environment (library paths, ASCEND_* variables) comes from its set_env.sh, whose location moved
# between CANN releases; then the same entrypoint as the other images.
set -e
for env_script in /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh; do
    if [ -f "$env_script" ]; then
        . "$env_script"
        break
    fi
done
exec python -m deploy.serve "$@"
