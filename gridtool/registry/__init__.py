"""The registry: records, keys, and the store they live in.

Pure: ``keys``, ``model``, ``records``, ``sync``, ``store`` (the protocol),
``memstore`` (an in-memory store for the simulator). Shell: ``etcdstore`` (etcd),
``fleet`` (typed reads and writes), ``intents``, ``hostconf``, ``settings``."""
