"""Generated protobuf and gRPC code for the ``fedcity.v1`` wire format (do not edit)."""
