//! This SDK served as an MCP server.
