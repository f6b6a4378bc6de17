"""protobuf (xds-protos) -> model.  ALL validation happens here; errors name the field path."""
