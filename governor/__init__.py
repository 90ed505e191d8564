"""governor: PostgreSQL high availability through a leader lock in etcd."""

__version__ = "0.1.0"
